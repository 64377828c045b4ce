//! The daemon's side of the data plane: `DataPlaneTarget` (the `local` target as the
//! daemon sees it) and `DataPlaneCounters` (the builtin metrics source's counters).
//!
//! `DataPlaneTarget` connects to `DIR/dataplane.sock`; when nothing answers it starts
//! `rollgate dataplane serve --dir DIR` and waits for it. A data plane found running is
//! adopted as it is: the daemon's first pass re-applies the state in Git, which the data
//! plane finds already in place (no restart, no route change). When the data plane
//! itself was replaced (its `Identity` changed: it crashed and was started again), the
//! client replays what it last applied to each plan before anything else, so the new
//! one serves the same versions and weights.
//! Invariants: every `Target` call is one `Run` request; a data plane of another
//! protocol is never driven; an unreachable data plane is a `TargetError` (the rollout
//! holds), never a pass.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use super::identity::Identity;
use super::wire::{OpWire, PROTOCOL, Reply, Request, SpecWire};
use super::{pid_path, socket_path};
use crate::engine::TargetHealth;
use crate::metrics::builtin::ProxyCounters;
use crate::model::Plan;
use crate::model::plan::Routing;
use crate::proxy::WindowStats;
use crate::targets::local::{Op, Spec};
use crate::targets::{Desired, Target, TargetError};

/// The longest a target call may take: a start waits for health (10 s) and a drain
/// (10 s) may follow, and a stop gives the old process 5 s.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a freshly started data plane has to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How the daemon starts a data plane it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// In its own process group: it outlives the daemon (`rollgate run`).
    Detached,
    /// For this process alone (`rollgate demo`): in its process group (a Ctrl-C stops
    /// both), and it stops by itself when this process is gone, however it ended.
    Attached,
    /// Never: only talk to one that runs (metrics readers, `stop`).
    Never,
}

/// One connection to the data plane of a folder.
#[derive(Debug)]
struct Connection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Connection {
    fn open(dir: &Path) -> std::io::Result<Connection> {
        let s = UnixStream::connect(socket_path(dir))?;
        s.set_read_timeout(Some(CALL_TIMEOUT))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(Connection {
            writer: s.try_clone()?,
            reader: BufReader::new(s),
        })
    }

    fn call(&mut self, req: &Request) -> Result<Reply, String> {
        let line = serde_json::to_string(req).map_err(|e| e.to_string())?;
        writeln!(self.writer, "{line}").map_err(|e| format!("cannot send: {e}"))?;
        let mut answer = String::new();
        let n = self
            .reader
            .read_line(&mut answer)
            .map_err(|e| format!("no answer: {e}"))?;
        if n == 0 {
            return Err("the data plane closed the connection".to_owned());
        }
        serde_json::from_str(&answer).map_err(|e| format!("unreadable answer: {e}"))
    }
}

/// The pauses before each try of a data-plane call (the first at once): about half a
/// second in all before the target is reported unreachable.
const RETRY_PAUSES: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(100),
    Duration::from_millis(400),
];

/// One request on a fresh connection to the data plane of `dir` (no start).
pub fn request(dir: &Path, req: &Request) -> Result<Reply, String> {
    Connection::open(dir)
        .map_err(|e| {
            format!(
                "no data plane answers on {}: {e}",
                socket_path(dir).display()
            )
        })?
        .call(req)
}

/// A data plane's answer to `Hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub protocol: u32,
    pub version: String,
    pub identity: Identity,
}

/// Who runs the data plane of `dir`, if one answers.
pub fn hello(dir: &Path) -> Result<Hello, String> {
    match request(dir, &Request::Hello)? {
        Reply::Hello {
            protocol,
            version,
            identity,
        } => Ok(Hello {
            protocol,
            version,
            identity,
        }),
        other => Err(format!("unexpected answer to hello: {other:?}")),
    }
}

/// What the daemon last applied to a plan, to replay on a replaced data plane.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Applied {
    stable: Option<String>,
    candidate: Option<String>,
    weight: u8,
    routing: Routing,
}

impl Applied {
    fn after(&self, op: &Op) -> Applied {
        let mut a = self.clone();
        match op {
            Op::StartCandidate { artifact } => {
                if a.stable.as_deref() != Some(artifact) && a.candidate.as_ref() != Some(artifact) {
                    a.candidate = Some(artifact.clone());
                    a.weight = 0;
                    a.routing = Routing::default();
                }
            }
            Op::SetWeight { weight } => a.weight = *weight,
            Op::SetRouting { routing } => a.routing = routing.clone(),
            Op::Promote { artifact } => {
                a.stable = Some(artifact.clone());
                a.candidate = None;
                a.weight = 0;
                a.routing = Routing::default();
            }
            Op::Rollback { stable } => {
                if stable.is_some() {
                    a.stable.clone_from(stable);
                }
                a.candidate = None;
                a.weight = 0;
                a.routing = Routing::default();
            }
            Op::Resume {
                stable,
                candidate,
                weight,
            } => {
                a.stable.clone_from(stable);
                a.candidate = Some(candidate.clone());
                a.weight = *weight;
            }
            Op::Health { .. } => {}
        }
        a
    }

    fn replay(&self) -> Vec<Op> {
        match (&self.stable, &self.candidate) {
            (stable, Some(candidate)) => {
                let mut ops = vec![Op::Resume {
                    stable: stable.clone(),
                    candidate: candidate.clone(),
                    weight: self.weight,
                }];
                if !self.routing.is_empty() {
                    ops.push(Op::SetRouting {
                        routing: self.routing.clone(),
                    });
                }
                ops
            }
            (Some(stable), None) => vec![Op::Promote {
                artifact: stable.clone(),
            }],
            (None, None) => Vec::new(),
        }
    }
}

/// The `local` target as the daemon drives it: through the data plane of `dir`.
#[derive(Debug)]
pub struct DataPlaneTarget {
    dir: PathBuf,
    launch: Launch,
    conn: Option<Connection>,
    /// The data plane last talked to.
    identity: Option<Identity>,
    applied: BTreeMap<String, (Spec, Applied)>,
}

impl DataPlaneTarget {
    pub fn new(dir: PathBuf, launch: Launch) -> Self {
        Self {
            dir,
            launch,
            conn: None,
            identity: None,
            applied: BTreeMap::new(),
        }
    }

    /// The folder this data plane owns.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Start `rollgate dataplane serve --dir DIR` with a cleared environment.
    fn launch(&self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find rollgate: {e}"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dataplane.log"))
            .map_err(|e| format!("cannot open the data plane's log: {e}"))?;
        let err_log = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(exe);
        cmd.arg("dataplane")
            .arg("serve")
            .arg("--dir")
            .arg(&self.dir)
            .env_clear()
            .envs(crate::targets::local::inherited_env())
            .envs(std::env::var("RUST_LOG").ok().map(|v| ("RUST_LOG", v)))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log);
        match self.launch {
            Launch::Detached => {
                cmd.process_group(0);
            }
            Launch::Attached => {
                cmd.arg("--owner-pid").arg(std::process::id().to_string());
            }
            Launch::Never => {}
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the data plane: {e}"))?;
        tracing::info!(dir = %self.dir.display(), pid = child.id(), "started the data plane");
        // Not waited for: it outlives this process. Its exit is seen as a dead socket.
        drop(child);
        Ok(())
    }

    /// A live connection, starting the data plane if allowed and needed; replays the
    /// applied state when the data plane is not the one last talked to.
    fn connect(&mut self) -> Result<&mut Connection, String> {
        if self.conn.is_none() {
            let conn = match Connection::open(&self.dir) {
                Ok(c) => c,
                Err(first) => {
                    if self.launch == Launch::Never {
                        return Err(format!(
                            "no data plane answers on {}: {first}",
                            socket_path(&self.dir).display()
                        ));
                    }
                    self.launch()?;
                    let deadline = Instant::now() + START_TIMEOUT;
                    loop {
                        match Connection::open(&self.dir) {
                            Ok(c) => break c,
                            Err(e) if Instant::now() > deadline => {
                                return Err(format!(
                                    "the data plane did not start within {}s ({e}); see {}",
                                    START_TIMEOUT.as_secs(),
                                    self.dir.join("dataplane.log").display()
                                ));
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(20)),
                        }
                    }
                }
            };
            self.conn = Some(conn);
            let answer = match self.conn.as_mut() {
                Some(c) => c.call(&Request::Hello),
                None => Err("no connection".to_owned()),
            };
            let hello = match answer {
                Ok(Reply::Hello {
                    protocol,
                    version,
                    identity,
                }) => (protocol, version, identity),
                Ok(other) => {
                    self.conn = None;
                    return Err(format!("unexpected answer to hello: {other:?}"));
                }
                Err(e) => {
                    self.conn = None;
                    return Err(e);
                }
            };
            let (protocol, version, identity) = hello;
            if protocol != PROTOCOL {
                self.conn = None;
                return Err(format!(
                    "the data plane on {} (pid {}, rollgate {version}) speaks protocol {protocol}, this rollgate {PROTOCOL}; \
                     stop it with `rollgate dataplane stop --dir {}` (its workloads stop too) and start again",
                    self.dir.display(),
                    identity.pid,
                    self.dir.display()
                ));
            }
            let replaced = self.identity.as_ref().is_some_and(|old| *old != identity);
            if self.identity.is_none() {
                tracing::info!(pid = identity.pid, dir = %self.dir.display(), "adopted the data plane");
            }
            self.identity = Some(identity);
            if replaced {
                tracing::warn!(dir = %self.dir.display(), "the data plane was replaced; re-applying every plan's last state");
                let replays: Vec<(Spec, Op)> = self
                    .applied
                    .values()
                    .flat_map(|(spec, a)| a.replay().into_iter().map(|op| (spec.clone(), op)))
                    .collect();
                for (spec, op) in replays {
                    let conn = self.conn.as_mut().ok_or("connection lost")?;
                    match conn.call(&Request::Run {
                        spec: Box::new(SpecWire::from(&spec)),
                        op: OpWire::from(&op),
                    }) {
                        Ok(Reply::Done) => {}
                        Ok(other) => {
                            tracing::warn!(plan = %spec.plan, answer = ?other, "replay failed")
                        }
                        Err(e) => {
                            self.conn = None;
                            return Err(e);
                        }
                    }
                }
            }
        }
        self.conn.as_mut().ok_or_else(|| "no connection".to_owned())
    }

    /// Run `op` on `plan` in the data plane: retried on a fresh connection when the old
    /// one broke (a data plane that restarted), after [`RETRY_PAUSES`]: a data plane
    /// killed mid-call can still accept a connection while the kernel tears it down,
    /// so two tries in a row may both meet the dying process. Every `Op` is idempotent.
    fn run(&mut self, plan: &Plan, op: Op) -> Result<Reply, TargetError> {
        let spec = Spec::of(plan)?;
        let req = Request::Run {
            spec: Box::new(SpecWire::from(&spec)),
            op: OpWire::from(&op),
        };
        let mut last = String::new();
        for pause in RETRY_PAUSES {
            std::thread::sleep(pause);
            let answer = match self.connect() {
                Ok(conn) => conn.call(&req),
                Err(e) => Err(e),
            };
            match answer {
                Ok(reply) => {
                    if matches!(reply, Reply::Done) {
                        let before = self
                            .applied
                            .get(&spec.plan)
                            .map(|(_, a)| a.clone())
                            .unwrap_or_default();
                        self.applied
                            .insert(spec.plan.clone(), (spec.clone(), before.after(&op)));
                    }
                    return Ok(reply);
                }
                Err(e) => {
                    self.conn = None;
                    last = e;
                }
            }
        }
        // Not answering after the retries: the data plane is unreachable.
        Err(TargetError::unreachable(format!(
            "data plane {}: {last}",
            self.dir.display()
        )))
    }

    fn done(&mut self, plan: &Plan, op: Op) -> Result<(), TargetError> {
        match self.run(plan, op)? {
            Reply::Done => Ok(()),
            Reply::Failed { error } => Err(TargetError::failed(error)),
            other => Err(TargetError::failed(format!("unexpected answer: {other:?}"))),
        }
    }
}

impl Target for DataPlaneTarget {
    fn start_candidate(&mut self, plan: &Plan, artifact: &str) -> Result<(), TargetError> {
        self.done(
            plan,
            Op::StartCandidate {
                artifact: artifact.to_owned(),
            },
        )
    }

    fn set_weight(&mut self, plan: &Plan, weight: u8) -> Result<(), TargetError> {
        self.done(plan, Op::SetWeight { weight })
    }

    fn set_routing(&mut self, plan: &Plan, routing: &Routing) -> Result<(), TargetError> {
        self.done(
            plan,
            Op::SetRouting {
                routing: routing.clone(),
            },
        )
    }

    fn promote(&mut self, plan: &Plan, artifact: &str) -> Result<(), TargetError> {
        self.done(
            plan,
            Op::Promote {
                artifact: artifact.to_owned(),
            },
        )
    }

    fn rollback(&mut self, plan: &Plan, stable: Option<&str>) -> Result<(), TargetError> {
        self.done(
            plan,
            Op::Rollback {
                stable: stable.map(str::to_owned),
            },
        )
    }

    fn health(&mut self, plan: &Plan, desired: &Desired) -> TargetHealth {
        match self.run(
            plan,
            Op::Health {
                desired: desired.clone(),
            },
        ) {
            Ok(Reply::Health { health }) => health.into(),
            Ok(other) => TargetHealth::Unreachable {
                reason: format!("unexpected answer: {other:?}"),
            },
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
        self.done(
            plan,
            Op::Resume {
                stable: stable.map(str::to_owned),
                candidate: candidate.to_owned(),
                weight,
            },
        )
    }
}

/// The builtin source's counters, read from the data plane of `dir` (never started here).
#[derive(Debug)]
pub struct DataPlaneCounters {
    dir: PathBuf,
}

impl DataPlaneCounters {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
}

impl ProxyCounters for DataPlaneCounters {
    fn window(
        &self,
        plan: &str,
        version: &str,
        window: Duration,
    ) -> Result<Option<(WindowStats, SystemTime)>, String> {
        match request(
            &self.dir,
            &Request::Window {
                plan: plan.to_owned(),
                version: version.to_owned(),
                window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            },
        )? {
            Reply::Window { counted: None } => Ok(None),
            Reply::Window {
                counted: Some(counted),
            } => counted
                .into_parts()
                .map(Some)
                .ok_or_else(|| "the data plane's histogram is of another build".to_owned()),
            other => Err(format!("unexpected answer: {other:?}")),
        }
    }
}

/// The identity recorded by the data plane of `dir`, alive or not.
pub fn recorded(dir: &Path) -> Option<Identity> {
    Identity::read(&pid_path(dir))
}
