//! The `local` target: a workload as processes on this host, behind rollgate's proxy.
//!
//! ```text
//!   clients ──▶ proxy (plan.listen) ──weight%──▶ candidate process (127.0.0.1:free port)
//!                                    └─rest───▶ stable process    (127.0.0.1:free port)
//! ```
//! Each plan gets a proxy on its `listen` address and up to two supervised processes,
//! started from the plan's `command` with `{{port}}` and `{{version}}` filled in; a
//! process that exits is restarted with backoff, its output goes to
//! `STATE/<plan>/<version>.log`. Promotion routes everything to the candidate, drains
//! the old stable and only then stops it; rollback routes everything to stable, drains
//! the candidate, then stops it: no request is dropped by a route change.
//! After a daemon restart, processes are restarted from the state in Git (the
//! daemon re-applies the current step), and leftovers of the previous run, found by
//! their pid files, are stopped first.
//! Invariants: every method is idempotent; nothing outside `STATE/<plan>/` is written.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Desired, Target, TargetError};
use crate::engine::TargetHealth;
use crate::metrics::builtin::Registry;
use crate::model::Plan;
use crate::model::plan::{LocalWorkload, Workload};
use crate::proxy::{Backend, Proxy};

/// Restarts within a short time after which a process counts as crash-looping.
const CRASH_LOOP_RESTARTS: u32 = 3;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Instance {
    version: String,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    restarts: Arc<AtomicU32>,
    child: Arc<Mutex<Option<Child>>>,
    supervisor: Option<std::thread::JoinHandle<()>>,
    pid_file: PathBuf,
}

impl Instance {
    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(mut c) = self.child.lock() {
            if let Some(child) = c.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
            *c = None;
        }
        if let Some(h) = self.supervisor.take() {
            let _ = h.join();
        }
        let _ = std::fs::remove_file(&self.pid_file);
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
}

impl Runtime {
    fn route(&self) {
        let stable = self.stable.as_ref().map(Instance::backend);
        let candidate = self.candidate.as_ref().map(Instance::backend);
        match (stable, candidate) {
            // Nothing else can serve: the only version takes everything.
            (None, Some(c)) => self.proxy.set_routes(Some(c), None, 0),
            (s, c) => self.proxy.set_routes(s, c, self.weight),
        }
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
    TargetError(msg.into())
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
    /// for the builtin metrics source.
    pub fn new(state_dir: PathBuf, registry: Registry) -> Self {
        Self {
            state_dir,
            plans: HashMap::new(),
            registry,
        }
    }

    fn plan_dir(&self, plan: &str) -> PathBuf {
        self.state_dir.join(plan)
    }

    fn runtime(&mut self, plan: &Plan) -> Result<&mut Runtime, TargetError> {
        if !self.plans.contains_key(&plan.name) {
            let l = local(plan)?;
            let dir = self.plan_dir(&plan.name);
            std::fs::create_dir_all(&dir)
                .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
            stop_leftovers(&dir);
            let proxy = Proxy::start(l.listen, l.sticky.clone())
                .map_err(|e| err(format!("proxy cannot listen on {}: {e}", l.listen)))?;
            if let Ok(mut r) = self.registry.lock() {
                r.insert(plan.name.clone(), proxy.stats());
            }
            self.plans.insert(
                plan.name.clone(),
                Runtime {
                    proxy,
                    stable: None,
                    candidate: None,
                    weight: 0,
                },
            );
        }
        self.plans
            .get_mut(&plan.name)
            .ok_or_else(|| err("runtime vanished"))
    }

    fn spawn(&self, plan: &Plan, version: &str) -> Result<Instance, TargetError> {
        let l = local(plan)?;
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
        let dir = self.plan_dir(&plan.name);
        let safe: String = version
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let log_path = dir.join(format!("{safe}.log"));
        let pid_file = dir.join(format!("{safe}.pid"));
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
                let c = Command::new(&argv[0])
                    .args(&argv[1..])
                    .env_clear()
                    .envs(inherited_env())
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()?;
                std::fs::write(&pid_file, c.id().to_string())?;
                Ok(c)
            }
        };
        let first = start().map_err(|e| err(format!("cannot start `{}`: {e}", argv.join(" "))))?;
        *child.lock().map_err(|_| err("lock poisoned"))? = Some(first);
        let supervisor = {
            let (stop, restarts, child) = (stop.clone(), restarts.clone(), child.clone());
            let plan_name = plan.name.clone();
            let version = version.to_owned();
            std::thread::spawn(move || {
                supervise(&plan_name, &version, &stop, &restarts, &child, &start)
            })
        };
        tracing::info!(plan = %plan.name, version, %addr, log = %log_path.display(), "process started");
        Ok(Instance {
            version: version.to_owned(),
            addr,
            stop,
            restarts,
            child,
            supervisor: Some(supervisor),
            pid_file,
        })
    }

    fn healthy(plan: &Plan, i: &Instance) -> Result<(), String> {
        let l = local(plan).map_err(|e| e.0)?;
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
    fn wait_ready(plan: &Plan, i: &Instance) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if Self::healthy(plan, i).is_ok()
                || !i.alive() && i.restarts.load(Ordering::SeqCst) >= CRASH_LOOP_RESTARTS
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
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

/// Stop processes a previous run left behind (their pid files are in `dir`).
fn stop_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "pid") {
            if let Some(pid) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                && Path::new(&format!("/proc/{pid}")).exists()
            {
                tracing::info!(pid, "stopping a process left by a previous run");
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
            let _ = std::fs::remove_file(&path);
        }
    }
}

impl Target for LocalTarget {
    fn start_candidate(&mut self, plan: &Plan, artifact: &str) -> Result<(), TargetError> {
        self.runtime(plan)?;
        let running = self
            .plans
            .get(&plan.name)
            .and_then(|r| r.candidate.as_ref())
            .is_some_and(|c| c.version == artifact);
        let is_stable = self
            .plans
            .get(&plan.name)
            .and_then(|r| r.stable.as_ref())
            .is_some_and(|s| s.version == artifact);
        if running || is_stable {
            return Ok(());
        }
        let inst = self.spawn(plan, artifact)?;
        Self::wait_ready(plan, &inst);
        let rt = self.runtime(plan)?;
        let old = rt.candidate.replace(inst);
        rt.weight = 0;
        rt.route();
        if let Some(old) = old {
            rt.proxy.drain(old.addr, DRAIN_TIMEOUT);
            old.stop();
        }
        Ok(())
    }

    fn set_weight(&mut self, plan: &Plan, weight: u8) -> Result<(), TargetError> {
        let rt = self.runtime(plan)?;
        if rt.candidate.is_none() {
            return Err(err(format!("no candidate is running for {}", plan.name)));
        }
        rt.weight = weight.min(100);
        rt.route();
        Ok(())
    }

    fn promote(&mut self, plan: &Plan, artifact: &str) -> Result<(), TargetError> {
        self.runtime(plan)?;
        let rt = self
            .plans
            .get(&plan.name)
            .ok_or_else(|| err("runtime vanished"))?;
        if rt.stable.as_ref().is_some_and(|s| s.version == artifact) && rt.candidate.is_none() {
            return Ok(());
        }
        if rt.candidate.as_ref().is_none_or(|c| c.version != artifact) {
            // After a restart the candidate may be gone: start it again first.
            self.start_candidate(plan, artifact)?;
        }
        let rt = self.runtime(plan)?;
        let new = rt
            .candidate
            .take()
            .ok_or_else(|| err("no candidate to promote"))?;
        let old = rt.stable.replace(new);
        rt.weight = 0;
        rt.route();
        if let Some(old) = old {
            rt.proxy.drain(old.addr, DRAIN_TIMEOUT);
            old.stop();
        }
        Ok(())
    }

    fn rollback(&mut self, plan: &Plan, stable: Option<&str>) -> Result<(), TargetError> {
        let need_stable = stable.is_some_and(|v| {
            self.plans
                .get(&plan.name)
                .is_none_or(|r| r.stable.as_ref().is_none_or(|s| s.version != v))
        });
        if let (true, Some(v)) = (need_stable, stable) {
            // After a restart the stable process must come back before traffic moves to it.
            let inst = self.spawn(plan, v)?;
            Self::wait_ready(plan, &inst);
            let rt = self.runtime(plan)?;
            if let Some(old) = rt.stable.replace(inst) {
                old.stop();
            }
        }
        let rt = self.runtime(plan)?;
        let cand = rt.candidate.take();
        rt.weight = 0;
        rt.route();
        if let Some(c) = cand {
            rt.proxy.drain(c.addr, DRAIN_TIMEOUT);
            c.stop();
        }
        Ok(())
    }

    fn health(&mut self, plan: &Plan, desired: &Desired) -> TargetHealth {
        let Some(rt) = self.plans.get(&plan.name) else {
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
        if desired.candidate.is_some() && rt.weight != desired.weight {
            return TargetHealth::Progressing;
        }
        for i in [&rt.candidate, &rt.stable].into_iter().flatten() {
            if let Err(reason) = Self::healthy(plan, i) {
                return if i.restarts.load(Ordering::SeqCst) >= CRASH_LOOP_RESTARTS {
                    TargetHealth::Unhealthy { reason }
                } else {
                    TargetHealth::Progressing
                };
            }
        }
        TargetHealth::Healthy
    }
}

impl Drop for LocalTarget {
    fn drop(&mut self) {
        for (_, rt) in self.plans.drain() {
            for i in [rt.candidate, rt.stable].into_iter().flatten() {
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

fn inherited_env() -> Vec<(String, String)> {
    INHERITED_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect()
}
