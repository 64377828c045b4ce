//! The `local` target: a workload as processes on this host, behind rollgate's proxy.
//!
//! ```text
//!   clients ──▶ proxy (plan.listen) ──weight%──▶ candidate process (127.0.0.1:free port)
//!                                    ├─weight%──▶ fresh baseline   (the stable artifact, when asked)
//!                                    └─rest───▶ stable process    (127.0.0.1:free port)
//! ```
//! Each plan gets a proxy on its `listen` address and up to three supervised processes
//! (the third a fresh baseline: a new copy of the stable artifact, routed the
//! candidate's share and counted under `stats::baseline_series`, only while
//! `Routing::baseline` asks for it; its files are `<version>.baseline.*`),
//! started from the plan's `command` with `{{port}}` and `{{version}}` filled in; a
//! process that exits is restarted with backoff, its output goes to
//! `STATE/<plan>/<version>.log`. Promotion routes everything to the candidate, drains
//! the old stable and only then stops it; rollback routes everything to stable, drains
//! the candidate, then stops it: no request is dropped by a route change.
//! This is the data plane's engine: `rollgate dataplane` (see `crate::dataplane`) hosts
//! one `LocalTarget` in a process of its own, so proxies and workloads outlive the
//! daemon; the daemon reaches it through `dataplane::client::DataPlaneTarget`. Both
//! go through `LocalTarget::run`, one dispatch of an `Op` on a plan's `Spec`.
//! Each process has a pid file `STATE/<plan>/<version>-<pid>.pid` holding its
//! `Identity` (pid, start time, boot, argv). Leftovers of an earlier data plane are
//! matched by identity and stopped before anything new starts for that plan, on every
//! path (start, resume, promote, rollback).
//! Invariants: every method is idempotent; `resume` of the state already running moves
//! no traffic; nothing outside `STATE/<plan>/` is written.
//!
//! One job over 600 lines, kept in one file: the local target: supervised processes
//! behind the proxy.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Desired, Target, TargetError};
use crate::dataplane::identity::Identity;
use crate::engine::TargetHealth;
use crate::metrics::builtin::Registry;
use crate::model::Plan;
use crate::model::plan::{LocalWorkload, Routing, Workload};
use crate::proxy::{Backend, Proxy};

/// Restarts within a short time after which a process counts as crash-looping.
const CRASH_LOOP_RESTARTS: u32 = 3;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped workload has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the local target needs of a plan: its name and its `local` workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub plan: String,
    pub workload: LocalWorkload,
}

impl Spec {
    /// The local part of `plan`; an error for any other kind of workload.
    pub fn of(plan: &Plan) -> Result<Spec, TargetError> {
        Ok(Spec {
            plan: plan.name.clone(),
            workload: local(plan)?.clone(),
        })
    }
}

/// One `Target` call, as a value: the same dispatch runs in-process and in the data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    StartCandidate {
        artifact: String,
    },
    SetWeight {
        weight: u8,
    },
    SetRouting {
        routing: Routing,
    },
    Promote {
        artifact: String,
    },
    Rollback {
        stable: Option<String>,
    },
    Resume {
        stable: Option<String>,
        candidate: String,
        weight: u8,
    },
    Health {
        desired: Desired,
    },
}

/// What an `Op` came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed(String),
    Health(TargetHealth),
}

#[derive(Debug)]
struct Instance {
    version: String,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    restarts: Arc<AtomicU32>,
    child: Arc<Mutex<Option<Child>>>,
    supervisor: Option<std::thread::JoinHandle<()>>,
    /// The pid file of the current process (a restart writes a new one).
    pid_file: Arc<Mutex<Option<PathBuf>>>,
}

impl Instance {
    /// SIGTERM, `STOP_GRACE` to exit, then SIGKILL; the pid file goes last.
    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(mut c) = self.child.lock() {
            if let Some(child) = c.as_mut() {
                terminate(child, STOP_GRACE);
            }
            *c = None;
        }
        if let Some(h) = self.supervisor.take() {
            let _ = h.join();
        }
        if let Some(p) = self.pid_file.lock().ok().and_then(|mut p| p.take()) {
            let _ = std::fs::remove_file(p);
        }
    }

    fn alive(&self) -> bool {
        self.child.lock().is_ok_and(|mut c| {
            c.as_mut()
                .is_some_and(|ch| matches!(ch.try_wait(), Ok(None)))
        })
    }

    fn backend(&self) -> Backend {
        Backend {
            version: self.version.clone(),
            addr: self.addr,
        }
    }
}

#[derive(Debug)]
struct Runtime {
    proxy: Proxy,
    stable: Option<Instance>,
    candidate: Option<Instance>,
    weight: u8,
    /// A fresh copy of the stable artifact, running while `routing.baseline` asks for it.
    baseline: Option<Instance>,
    /// Header route, mirror and fresh baseline; in force only while both versions run.
    routing: Routing,
}

impl Runtime {
    fn route(&self) -> Result<(), TargetError> {
        let stable = self.stable.as_ref().map(Instance::backend);
        let candidate = self.candidate.as_ref().map(Instance::backend);
        let baseline = self
            .baseline
            .as_ref()
            .filter(|_| self.routing.baseline)
            .map(|b| Backend {
                version: crate::proxy::stats::baseline_series(&b.version),
                addr: b.addr,
            });
        match (stable, candidate) {
            // Nothing else can serve: the only version takes everything.
            (None, Some(c)) => {
                self.proxy.set_routes(Some(c), None, 0);
                Ok(())
            }
            (s, c) => self
                .proxy
                .set_shares(s, c, baseline, self.weight, &self.routing)
                .map_err(TargetError::refused),
        }
    }

    /// Take the fresh baseline out of the routes (if it runs), drain it and stop it.
    fn retire_baseline(&mut self) -> Result<(), TargetError> {
        let Some(b) = self.baseline.take() else {
            return Ok(());
        };
        self.routing.baseline = false;
        let routed = self.route();
        self.proxy.drain(b.addr, DRAIN_TIMEOUT);
        b.stop();
        routed
    }
}

/// Processes on this host; see the module docs.
#[derive(Debug)]
pub struct LocalTarget {
    state_dir: PathBuf,
    plans: HashMap<String, Runtime>,
    registry: Registry,
}

fn err(msg: impl Into<String>) -> TargetError {
    TargetError::failed(msg.into())
}

fn local(plan: &Plan) -> Result<&LocalWorkload, TargetError> {
    match &plan.workload {
        Workload::Local(l) => Ok(l),
        other => Err(err(format!(
            "plan {} has a {} workload; the local target runs `local` workloads",
            plan.name,
            other.kind()
        ))),
    }
}

/// Stop our own child: SIGTERM, up to `grace` to exit, then SIGKILL. The child is not
/// reaped before this returns, so its pid cannot have been reused.
fn terminate(child: &mut Child, grace: Duration) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    if let Some(pid) = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn free_port() -> Result<u16, TargetError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| err(format!("no free port: {e}")))?;
    Ok(l.local_addr().map_err(|e| err(e.to_string()))?.port())
}

/// One HTTP/1.0 GET: the status code and the body, or why not.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(256);
    s.take(64 * 1024)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP answer: {:?}",
                text.chars().take(40).collect::<String>()
            )
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((code, body))
}

/// One HTTP/1.0 GET; the status code, or why not.
pub fn http_status(addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, String> {
    http_get(addr, path, timeout).map(|(code, _)| code)
}

impl LocalTarget {
    /// `state_dir` holds logs and pid files; `registry` receives each plan's proxy stats
    /// for the builtin metrics source. Processes that an earlier owner of `state_dir`
    /// left running are stopped (by identity) before anything starts.
    pub fn new(state_dir: PathBuf, registry: Registry) -> Self {
        if let Ok(entries) = std::fs::read_dir(&state_dir) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    stop_leftovers(&e.path());
                }
            }
        }
        Self {
            state_dir,
            plans: HashMap::new(),
            registry,
        }
    }

    /// The proxy statistics of `plan`, while it has a proxy here.
    pub fn stats(&self, plan: &str) -> Option<Arc<crate::proxy::Stats>> {
        self.plans.get(plan).map(|rt| rt.proxy.stats())
    }

    fn plan_dir(&self, plan: &str) -> PathBuf {
        self.state_dir.join(plan)
    }

    /// The plan's proxy, created on first use; leftovers in its folder are stopped first,
    /// so this runs before any process of the plan starts.
    fn runtime(&mut self, spec: &Spec) -> Result<&mut Runtime, TargetError> {
        if !self.plans.contains_key(&spec.plan) {
            let l = &spec.workload;
            let dir = self.plan_dir(&spec.plan);
            std::fs::create_dir_all(&dir)
                .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
            stop_leftovers(&dir);
            let proxy = Proxy::start(l.listen, l.sticky.clone())
                .map_err(|e| err(format!("proxy cannot listen on {}: {e}", l.listen)))?;
            if let Ok(mut r) = self.registry.lock() {
                r.insert(spec.plan.clone(), proxy.stats());
            }
            self.plans.insert(
                spec.plan.clone(),
                Runtime {
                    proxy,
                    stable: None,
                    candidate: None,
                    baseline: None,
                    weight: 0,
                    routing: Routing::default(),
                },
            );
        }
        self.plans
            .get_mut(&spec.plan)
            .ok_or_else(|| err("runtime vanished"))
    }

    /// Start `version` and wait until it answers its health check (bounded).
    fn spawn(&mut self, spec: &Spec, version: &str) -> Result<Instance, TargetError> {
        self.spawn_as(spec, version, "")
    }

    /// `spawn`, its log and pid files named `<version><suffix>` (a fresh baseline's
    /// `.baseline`, beside the stable's own).
    fn spawn_as(
        &mut self,
        spec: &Spec,
        version: &str,
        suffix: &str,
    ) -> Result<Instance, TargetError> {
        // Leftovers first: a new process never starts next to an old one of the plan.
        self.runtime(spec)?;
        let l = &spec.workload;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let fill = |s: &str| {
            s.replace("{{port}}", &port.to_string())
                .replace("{{version}}", version)
        };
        let mut argv: Vec<String> = l.command.iter().map(|a| fill(a)).collect();
        if argv.first().is_some_and(|p| p == "rollgate") {
            // The demo service ships inside this binary.
            if let Ok(exe) = std::env::current_exe() {
                argv[0] = exe.display().to_string();
            }
        }
        let dir = self.plan_dir(&spec.plan);
        let safe: String = version
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .chain(suffix.chars())
            .collect();
        let log_path = dir.join(format!("{safe}.log"));
        let env: Vec<(String, String)> = l
            .env
            .iter()
            .map(|(k, v)| (k.clone(), fill(v)))
            .chain([
                ("PORT".to_owned(), port.to_string()),
                ("ROLLGATE_VERSION".to_owned(), version.to_owned()),
            ])
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let restarts = Arc::new(AtomicU32::new(0));
        let child: Arc<Mutex<Option<Child>>> = Arc::new(Mutex::new(None));
        let pid_file: Arc<Mutex<Option<PathBuf>>> = Arc::new(Mutex::new(None));
        let start = {
            let argv = argv.clone();
            let env = env.clone();
            let log_path = log_path.clone();
            let pid_file = pid_file.clone();
            move || -> std::io::Result<Child> {
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log_path)?;
                // A cleared environment: the workload never inherits rollgate's own
                // secrets (Git and GitHub tokens, the webhook secret, AWS_*, metrics
                // auth), only the allowlist and the plan's `env`.
                let mut c = Command::new(&argv[0])
                    .args(&argv[1..])
                    .env_clear()
                    .envs(inherited_env())
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()?;
                // The record names this process exactly (pid, start time, argv), so a
                // later data plane stops it and nothing else.
                let path = log_path.with_file_name(format!("{safe}-{}.pid", c.id()));
                // A process that already exited needs no record: the supervisor sees it.
                let recorded = match Identity::of_spawned(c.id(), &argv) {
                    Some(id) => id.write(&path).map(|()| Some(path)),
                    None => Ok(None),
                };
                match recorded {
                    Err(e) => {
                        terminate(&mut c, Duration::ZERO);
                        return Err(e);
                    }
                    Ok(path) => {
                        let old = pid_file
                            .lock()
                            .ok()
                            .and_then(|mut slot| std::mem::replace(&mut *slot, path));
                        if let Some(old) = old {
                            let _ = std::fs::remove_file(old);
                        }
                    }
                }
                Ok(c)
            }
        };
        let first = start().map_err(|e| err(format!("cannot start `{}`: {e}", argv.join(" "))))?;
        *child.lock().map_err(|_| err("lock poisoned"))? = Some(first);
        let supervisor = {
            let (stop, restarts, child) = (stop.clone(), restarts.clone(), child.clone());
            let plan_name = spec.plan.clone();
            let version = version.to_owned();
            std::thread::spawn(move || {
                supervise(&plan_name, &version, &stop, &restarts, &child, &start)
            })
        };
        tracing::info!(plan = %spec.plan, version, %addr, log = %log_path.display(), "process started");
        let inst = Instance {
            version: version.to_owned(),
            addr,
            stop,
            restarts,
            child,
            supervisor: Some(supervisor),
            pid_file,
        };
        Self::wait_ready(l, &inst);
        Ok(inst)
    }

    fn healthy(l: &LocalWorkload, i: &Instance) -> Result<(), String> {
        if i.restarts.load(Ordering::SeqCst) >= CRASH_LOOP_RESTARTS {
            return Err(format!(
                "{} keeps crashing ({} restarts)",
                i.version,
                i.restarts.load(Ordering::SeqCst)
            ));
        }
        if !i.alive() {
            return Err(format!("{} is not running", i.version));
        }
        match http_status(i.addr, &l.health_path, l.health_timeout) {
            Ok(code) if code == l.health_status => Ok(()),
            Ok(code) => Err(format!(
                "{} answers {} on {} (want {})",
                i.version, code, l.health_path, l.health_status
            )),
            Err(e) => Err(format!("{} health check: {e}", i.version)),
        }
    }

    /// Wait until a fresh instance answers its health check (bounded), so traffic is
    /// never routed to a process that is still starting.
    fn wait_ready(l: &LocalWorkload, i: &Instance) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if Self::healthy(l, i).is_ok()
                || !i.alive() && i.restarts.load(Ordering::SeqCst) >= CRASH_LOOP_RESTARTS
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run one `Op` on the plan `spec` describes: the one entry of both the in-process
    /// `Target` and the data plane's socket.
    pub fn run(&mut self, spec: &Spec, op: &Op) -> Outcome {
        let done = |r: Result<(), TargetError>| match r {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(e.message),
        };
        match op {
            Op::StartCandidate { artifact } => done(self.start_candidate_of(spec, artifact)),
            Op::SetWeight { weight } => done(self.set_weight_of(spec, *weight)),
            Op::SetRouting { routing } => done(self.set_routing_of(spec, routing)),
            Op::Promote { artifact } => done(self.promote_of(spec, artifact)),
            Op::Rollback { stable } => done(self.rollback_of(spec, stable.as_deref())),
            Op::Resume {
                stable,
                candidate,
                weight,
            } => done(self.resume_of(spec, stable.as_deref(), candidate, *weight)),
            Op::Health { desired } => Outcome::Health(self.health_of(spec, desired)),
        }
    }

    fn start_candidate_of(&mut self, spec: &Spec, artifact: &str) -> Result<(), TargetError> {
        let rt = self.runtime(spec)?;
        let running = rt.candidate.as_ref().is_some_and(|c| c.version == artifact);
        let is_stable = rt.stable.as_ref().is_some_and(|s| s.version == artifact);
        if running || is_stable {
            return Ok(());
        }
        let inst = self.spawn(spec, artifact)?;
        let rt = self.runtime(spec)?;
        rt.retire_baseline()?;
        let old = rt.candidate.replace(inst);
        rt.weight = 0;
        rt.routing = Routing::default();
        rt.route()?;
        if let Some(old) = old {
            rt.proxy.drain(old.addr, DRAIN_TIMEOUT);
            old.stop();
        }
        Ok(())
    }

    fn set_weight_of(&mut self, spec: &Spec, weight: u8) -> Result<(), TargetError> {
        let rt = self.runtime(spec)?;
        if rt.candidate.is_none() {
            return Err(err(format!("no candidate is running for {}", spec.plan)));
        }
        if rt.weight != weight.min(100) {
            rt.weight = weight.min(100);
            rt.route()?;
        }
        Ok(())
    }

    fn set_routing_of(&mut self, spec: &Spec, routing: &Routing) -> Result<(), TargetError> {
        let rt = self.runtime(spec)?;
        if rt.candidate.is_none() {
            return Err(err(format!("no candidate is running for {}", spec.plan)));
        }
        let stable = rt.stable.as_ref().map(|s| s.version.clone());
        let copy_of_stable = rt
            .baseline
            .as_ref()
            .is_some_and(|b| Some(&b.version) == stable.as_ref());
        if !routing.baseline || !copy_of_stable {
            // Out of the routes before anything else changes (or before its replacement
            // starts: a copy of an older stable is no baseline).
            rt.retire_baseline()?;
        }
        if routing.baseline && !copy_of_stable {
            let Some(version) = stable else {
                return Err(TargetError::refused(format!(
                    "no stable version runs for {} to copy as a fresh baseline",
                    spec.plan
                )));
            };
            let inst = self.spawn_as(spec, &version, ".baseline")?;
            // Traffic never moves to a copy that does not answer its health check.
            if let Err(reason) = Self::healthy(&spec.workload, &inst) {
                inst.stop();
                return Err(err(format!("the fresh baseline is not ready: {reason}")));
            }
            let rt = self.runtime(spec)?;
            rt.baseline = Some(inst);
        }
        let rt = self.runtime(spec)?;
        if rt.routing != *routing || (routing.baseline && rt.proxy.baseline().is_none()) {
            let before = std::mem::replace(&mut rt.routing, routing.clone());
            if let Err(e) = rt.route() {
                rt.routing = before;
                return Err(e);
            }
        }
        Ok(())
    }

    fn promote_of(&mut self, spec: &Spec, artifact: &str) -> Result<(), TargetError> {
        let rt = self.runtime(spec)?;
        if rt.stable.as_ref().is_some_and(|s| s.version == artifact) && rt.candidate.is_none() {
            return Ok(());
        }
        if rt.stable.as_ref().is_some_and(|s| s.version == artifact) {
            // The stable already is `artifact`: only a candidate is left to retire.
            return self.rollback_of(spec, Some(artifact));
        }
        if rt.candidate.as_ref().is_none_or(|c| c.version != artifact) {
            // After a restart the candidate may be gone: start it again first.
            self.start_candidate_of(spec, artifact)?;
        }
        let rt = self.runtime(spec)?;
        rt.retire_baseline()?;
        let new = rt
            .candidate
            .take()
            .ok_or_else(|| err("no candidate to promote"))?;
        let old = rt.stable.replace(new);
        rt.weight = 0;
        rt.routing = Routing::default();
        rt.route()?;
        if let Some(old) = old {
            rt.proxy.drain(old.addr, DRAIN_TIMEOUT);
            old.stop();
        }
        Ok(())
    }

    fn rollback_of(&mut self, spec: &Spec, stable: Option<&str>) -> Result<(), TargetError> {
        let rt = self.runtime(spec)?;
        rt.retire_baseline()?;
        let need_stable = stable.is_some_and(|v| rt.stable.as_ref().is_none_or(|s| s.version != v));
        if let (true, Some(v)) = (need_stable, stable) {
            // The stable process must serve before traffic moves to it.
            let inst = self.spawn(spec, v)?;
            let rt = self.runtime(spec)?;
            if let Some(old) = rt.stable.replace(inst) {
                rt.route()?;
                rt.proxy.drain(old.addr, DRAIN_TIMEOUT);
                old.stop();
            }
        }
        let rt = self.runtime(spec)?;
        let cand = rt.candidate.take();
        rt.weight = 0;
        rt.routing = Routing::default();
        rt.route()?;
        if let Some(c) = cand {
            rt.proxy.drain(c.addr, DRAIN_TIMEOUT);
            c.stop();
        }
        Ok(())
    }

    /// Bring the plan to an in-flight step. What already runs as asked stays as it is
    /// (an adopted data plane after a daemon restart): no process restarts, no route
    /// changes. Only what is missing starts, the stable first.
    fn resume_of(
        &mut self,
        spec: &Spec,
        stable: Option<&str>,
        candidate: &str,
        weight: u8,
    ) -> Result<(), TargetError> {
        let rt = self.runtime(spec)?;
        let stable_ok = match stable {
            None => true,
            Some(v) => rt.stable.as_ref().is_some_and(|s| s.version == v),
        };
        if !stable_ok && let Some(v) = stable {
            let inst = self.spawn(spec, v)?;
            let rt = self.runtime(spec)?;
            // A copy of the old stable is no baseline for the new one.
            rt.retire_baseline()?;
            let old = rt.stable.replace(inst);
            rt.route()?;
            if let Some(old) = old {
                rt.proxy.drain(old.addr, DRAIN_TIMEOUT);
                old.stop();
            }
        }
        let rt = self.runtime(spec)?;
        if stable.is_none() && rt.stable.as_ref().is_some_and(|s| s.version == candidate) {
            // Nothing behind the candidate: it already serves everything as the stable.
            return Ok(());
        }
        self.start_candidate_of(spec, candidate)?;
        self.set_weight_of(spec, weight)
    }

    fn health_of(&mut self, spec: &Spec, desired: &Desired) -> TargetHealth {
        let l = &spec.workload;
        let Some(rt) = self.plans.get(&spec.plan) else {
            return if desired.stable.is_none() && desired.candidate.is_none() {
                TargetHealth::Healthy
            } else {
                TargetHealth::Progressing
            };
        };
        let version = |i: &Option<Instance>| i.as_ref().map(|x| x.version.clone());
        if version(&rt.stable) != desired.stable && desired.stable.is_some()
            || version(&rt.candidate) != desired.candidate
        {
            return TargetHealth::Progressing;
        }
        if desired.candidate.is_some()
            && (rt.weight != desired.weight || rt.routing != desired.routing)
        {
            return TargetHealth::Progressing;
        }
        // A fresh baseline runs, as a copy of the stable, exactly while one is asked for.
        let want_baseline = desired.candidate.is_some() && desired.routing.baseline;
        let baseline_ok = match &rt.baseline {
            None => !want_baseline,
            Some(b) => want_baseline && Some(&b.version) == desired.stable.as_ref(),
        };
        if !baseline_ok {
            return TargetHealth::Progressing;
        }
        for i in [&rt.candidate, &rt.stable, &rt.baseline]
            .into_iter()
            .flatten()
        {
            if let Err(reason) = Self::healthy(l, i) {
                return if i.restarts.load(Ordering::SeqCst) >= CRASH_LOOP_RESTARTS {
                    TargetHealth::Unhealthy { reason }
                } else {
                    TargetHealth::Progressing
                };
            }
        }
        TargetHealth::Healthy
    }

    /// Stop every plan's processes (after draining) and proxies.
    pub fn shutdown(&mut self) {
        for (name, rt) in self.plans.drain() {
            rt.proxy.set_routes(None, None, 0);
            for i in [rt.candidate, rt.baseline, rt.stable].into_iter().flatten() {
                rt.proxy.drain(i.addr, DRAIN_TIMEOUT);
                i.stop();
            }
            rt.proxy.shutdown();
            if let Ok(mut r) = self.registry.lock() {
                r.remove(&name);
            }
        }
    }
}

fn supervise(
    plan: &str,
    version: &str,
    stop: &AtomicBool,
    restarts: &AtomicU32,
    child: &Mutex<Option<Child>>,
    start: &dyn Fn() -> std::io::Result<Child>,
) {
    let mut backoff = Duration::from_millis(100);
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        let exited = match child.lock() {
            Ok(mut c) => match c.as_mut() {
                Some(ch) => matches!(ch.try_wait(), Ok(Some(_))),
                None => return,
            },
            Err(_) => return,
        };
        if !exited || stop.load(Ordering::SeqCst) {
            continue;
        }
        let n = restarts.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::warn!(
            plan,
            version,
            restarts = n,
            backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
            "process exited; restarting"
        );
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match start() {
            Ok(c) => {
                if let Ok(mut slot) = child.lock() {
                    *slot = Some(c);
                }
            }
            Err(e) => tracing::warn!(plan, version, error = %e, "restart failed"),
        }
    }
}

/// Stop the processes an earlier owner of `dir` left behind: each pid file's record is
/// matched by identity before any signal (a reused pid is a stranger, left alone);
/// every pid file is removed.
fn stop_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "pid") {
            if let Some(id) = Identity::read(&path)
                && id.is_alive()
            {
                tracing::info!(pid = id.pid, file = %path.display(), "stopping a process left by an earlier run");
                id.stop(STOP_GRACE);
            }
            let _ = std::fs::remove_file(&path);
        }
    }
}

impl Target for LocalTarget {
    fn start_candidate(&mut self, plan: &Plan, artifact: &str) -> Result<(), TargetError> {
        self.start_candidate_of(&Spec::of(plan)?, artifact)
    }

    fn set_weight(&mut self, plan: &Plan, weight: u8) -> Result<(), TargetError> {
        self.set_weight_of(&Spec::of(plan)?, weight)
    }

    fn set_routing(&mut self, plan: &Plan, routing: &Routing) -> Result<(), TargetError> {
        self.set_routing_of(&Spec::of(plan)?, routing)
    }

    fn promote(&mut self, plan: &Plan, artifact: &str) -> Result<(), TargetError> {
        self.promote_of(&Spec::of(plan)?, artifact)
    }

    fn rollback(&mut self, plan: &Plan, stable: Option<&str>) -> Result<(), TargetError> {
        self.rollback_of(&Spec::of(plan)?, stable)
    }

    fn health(&mut self, plan: &Plan, desired: &Desired) -> TargetHealth {
        match Spec::of(plan) {
            Ok(spec) => self.health_of(&spec, desired),
            Err(e) => TargetHealth::Unreachable { reason: e.message },
        }
    }

    fn resume(
        &mut self,
        plan: &Plan,
        stable: Option<&str>,
        candidate: &str,
        weight: u8,
    ) -> Result<(), TargetError> {
        self.resume_of(&Spec::of(plan)?, stable, candidate, weight)
    }
}

impl Drop for LocalTarget {
    fn drop(&mut self) {
        for (_, rt) in self.plans.drain() {
            for i in [rt.candidate, rt.baseline, rt.stable].into_iter().flatten() {
                i.stop();
            }
            rt.proxy.shutdown();
        }
    }
}

/// The variables a local workload inherits from rollgate: what a process needs to run
/// (`PATH`, `HOME`, locale, time zone, temp dir, user), nothing that can hold a secret.
pub const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "LC_NUMERIC",
    "LC_TIME",
    "TZ",
    "TMPDIR",
    "TERM",
];

/// The allowlisted variables of this process, to pass on.
pub fn inherited_env() -> Vec<(String, String)> {
    INHERITED_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect()
}
